# fastproxy._core: batchio (included by _core.pyx; see the module docstring there).
