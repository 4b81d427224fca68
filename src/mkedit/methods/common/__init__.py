"""Mechanisms shared by several methods, written once."""
