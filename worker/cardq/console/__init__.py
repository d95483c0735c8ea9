"""The live console: a page on the observability port showing what one pod is doing now.

``state.py`` gathers it (lanes, budgets, troubles, failures, dead letters, pauses),
``web.py`` serves it (a JSON endpoint, a static page, the token-protected actions),
``pauses.py`` and ``pool.py`` hold what an operator paused, in this pod or the pool.
Kept import-light: the scheduler imports ``pauses`` from here.
"""
