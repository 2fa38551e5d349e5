"""Hypothesis fuzzing of the fused rules: what is drawn, how each rule is run, campaigns and settings profiles.

It lives in the package (not under tests/) so that `normfuse fuzz` can run the same campaigns outside pytest.

    strategies   what the fuzzer draws: rows, scores, weights, gains, accumulators, coupled shapes (one module)
    rules        each rule as a Case strategy + reference / fused / oracle / allowance, `evaluate` and the
                 property body `assert_no_worse`
    campaign     one (rule, dtype) cell run by Hypothesis' engine: its verdicts, unchecked rows and statistics
    profiles     the Hypothesis settings profiles (ci, dev, thorough)

The criterion, the error analysis and the oracle are `normfuse_ref.accuracy`.
"""
