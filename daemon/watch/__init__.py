"""Watching folders: the only code that imports watchdog, the debounce queue, and which
paths a watch covers."""
