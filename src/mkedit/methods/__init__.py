"""Editing methods, all behind the :class:`~mkedit.methods.base.Editor` interface."""
