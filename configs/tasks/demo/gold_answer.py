"""Per-example results of the demo's signal tasks (written by `search.zoo.skills`)."""


def log_probability(doc, results):
    """The gold answer's log-probability under the model: higher is better."""
    logprob, _is_greedy = results[0]
    return {"gold_logprob": float(logprob)}
