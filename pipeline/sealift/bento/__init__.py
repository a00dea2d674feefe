"""`sealift build`: a Bento from a stored model (the service recipe in recipe/), with its golden outputs and evaluation configs. May import bundle, model, serving and core."""
