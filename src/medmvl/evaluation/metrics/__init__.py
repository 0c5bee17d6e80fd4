"""evaluation.metrics"""
