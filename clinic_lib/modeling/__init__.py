"""The cancellation-risk model: features, candidates and baselines, evaluation, training, scoring, monitoring, the call effect."""
