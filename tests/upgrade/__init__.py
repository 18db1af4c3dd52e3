"""The upgrade test's fixtures: sagas stored by the released 0.1.0, read by the current code.

``sagas`` is the user's code at 0.1.0 (frozen), ``plan`` what the fixtures hold, and
``make_fixtures`` the generator that wrote ``tests/data/v0.1.0/`` with the 0.1.0 code.
"""
