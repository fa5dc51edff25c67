"""Built-in baselines, one file each, discovered automatically by ``rome-bench``.

To add a method, drop a file here that calls ``@register_method("name", description=...)``;
no other edit is needed (see docs/adding-a-method.md).
"""
