# fastproxy._core: packet (included by _core.pyx; see the module docstring there).
