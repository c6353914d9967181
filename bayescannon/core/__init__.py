"""The numerical core: maths only, arrays in and arrays out.

vectorizer, scaling, likelihood (numpy | PyTensor), compiled kernels, training (θ and s²
steps), the batched label fit, uncertainty propagation and the latent-label MAP.
Nothing here imports the model, the Bayesian layer or the survey machinery.
"""
