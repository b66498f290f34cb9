"""Building programs: `Program`, the ``.lad`` text format, `parse` and `decompose`.

`Program` is the builder and the façade of the layers below: it freezes itself to the
IR of `core` and hands that to `symbolic` (``lagrangian()``, ``conditions()``) and to
`compiling` (``compile()``, ``solve()``). Imports point down only: ``symbolic``,
``compiling``, ``solving``, ``core``.
"""
