import os

os.environ.setdefault("DTUTOR_OFFLINE", "1")
os.environ.setdefault("DTUTOR_NO_TQDM", "1")
