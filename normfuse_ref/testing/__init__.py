"""Hypothesis fuzzing of the fused rules: strategies, the oracle, the equivalence criterion and the hazards.

It lives in the package (not under tests/) so that `normfuse fuzz` can run the same campaigns outside pytest.

    strategies   what the fuzzer draws: rows, scores, weights, gains, coupled shapes (one module, STYLE 7)
    bounds       running a-priori error bounds: the rounding analysis, executable
    equivalence  the criterion |fused - exact| <= c |reference - exact| + atol and its derivation
    rules        each rule as a Case strategy + reference / fused / oracle / allowance, and `evaluate`
    block        a Llama decoder block in reference order and fused order, and its error bound
    profiles     the Hypothesis settings profiles (ci, dev, thorough)
    campaign     the engine behind `normfuse fuzz`
"""
