"""The optforge compiler: specs in, kernels, classes and docs out.

Pipeline, one module each:

    spec.py            the spec model and its checks
    passes/            pure functions over SymPy expressions and the IR
      specialize.py      one flag combination -> its rules
      ssa.py             sequential rules -> single assignments
      levels.py          binding-time level of every expression
      hoist.py           step- and tensor-level work out of the element loop
      factored.py        every value's index space and phase (pass)
      schedule.py        the regions: what each computes, reloads and recomputes
      cse.py             common subexpressions, then a dependency order
    lower.py           runs the passes: spec + variant -> ir.Kernel, for every kind of kernel
    ir.py              regions over index spaces in ordered phases, which the backends print
    printers.py        SymPy printers: typed element code, float64 host code
    backends/cpu.py    ir.Kernel -> Numba CPU module (templates/cpu_kernels.py.j2)
    wrappers.py        spec -> dialect classes (templates/nn_class.py.j2)
    build.py           writes generated/, checks it is current
    cli.py             `optforge build | show`
"""
