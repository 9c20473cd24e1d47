"""Helpers the tests share (no tests here); tests/ is on sys.path under pytest, so `from helpers.x import y`."""
