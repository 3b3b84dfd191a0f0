"""Gradio Space for an hf_conpet system: the page of `hf_conpet.demo` on `HF_CONPET_SYSTEM`.

Run locally:

    HF_CONPET_SYSTEM=runs/quickstart/model python spaces/app.py     # or: hf-conpet demo runs/quickstart

On a Space, the hf_conpet package is uploaded next to this file (see README.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

from hf_conpet.demo import (  # noqa: E402
    NO_INSTRUCTION,
    SYSTEM_ENV,
    SystemNotFoundError,
    build_demo,
    build_prompt,
    load_system,
    make_predict,
    resolve_system,
    system_source,
)

__all__ = ["NO_INSTRUCTION", "SYSTEM_ENV", "SystemNotFoundError", "build_demo", "build_prompt", "load_system",
           "make_predict", "resolve_system", "system_source"]

if __name__ == "__main__":
    try:
        loaded_model, loaded_tokenizer = load_system()
    except SystemNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    except (OSError, ValueError) as error:  # from_pretrained's own messages say what does not fit
        raise SystemExit(f"error: cannot load the system: {type(error).__name__}: {error}") from None
    build_demo(loaded_model, loaded_tokenizer).launch()
