# fastproxy._core: flowtable (included by _core.pyx; see the module docstring there).
