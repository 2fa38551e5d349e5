"""The accuracy claim itself: the rounding-error analysis, the independent oracle and the equivalence criterion.

    bounds       running a-priori error bounds: the rounding analysis of both orders, executable (the one place it
                 lives; unit tests' tolerances come from it too)
    oracle       exact-as-practical values, computed without any of the code under test (fsum, float64 loops)
    equivalence  the criterion |fused - exact| <= c |reference - exact| + atol, its derivation, the allowance of
                 every rule and of a decoder block, unchecked rows, stated hazards, and the statistics of a cell

The fuzz machinery that drives them is `normfuse_ref.fuzz`.
"""
