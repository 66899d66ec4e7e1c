"""tinymvit"""
