"""data.sampling"""
