"""sealift: carry an LLM across an air gap with BentoML.

Steps, one module each, data flowing one way:
sources -> inspect -> manifest -> store -> build -> bundle (-> openllm, start).
"""

__version__ = "0.1.0"
