"""models.llm"""
