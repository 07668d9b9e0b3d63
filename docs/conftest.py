"""pytest's view of docs/: the doctests of the guide pages (`--doctest-glob='*.rst' docs`) run;
Sphinx's configuration and the example script (run by tests/test_examples.py) are not modules to
collect."""

collect_ignore = ["conf.py", "examples", "_build"]
