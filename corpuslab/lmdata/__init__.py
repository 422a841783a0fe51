"""lmdata"""
