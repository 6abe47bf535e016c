"""GPT4Image on top of MiniGPT-4: describe a labelled image set (``python -m minigpt4.caption``), embed the
descriptions with a frozen text encoder (:mod:`minigpt4.gpt4image.embed`), and train vision models with an
alignment loss toward each image's own description embedding."""
