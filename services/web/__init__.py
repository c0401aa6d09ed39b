"""The web page (`python -m services.web`): for people on the operator's machine -- drop a chest X-ray and see the
classifier's answer with its Grad-CAM, or read the latest experiment's report and the model and dataset cards.

Plain HTML, CSS and a little JavaScript served by FastAPI (no front-end toolchain); the browser talks only to this
service, which asks TorchServe (its inference key never leaves the server) and reads the results bucket.
"""
