"""TruthfulQA's greedy answers decode on the shared prefix's cache and stop at the model's next "Q:": the answers
must be those of transformers' generate() over the full prompts and the full length."""
import time

import pytest

from iti.truthfulqa.data import load_truthfulqa
from iti.truthfulqa.generation import generate_answers
from iti.truthfulqa.prompts import generation_prompt

from ..conftest import make_intervention

# slow (about 50 s on 2 cores): the default suite checks the same equality on tiny Llama and GPT-NeoX models
# (test_evaluation_parts.py::test_answers_on_the_shared_prefix_cache_equal_generate_on_full_prompts)
pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_shared_prefix_and_stopping_keep_every_answer_and_save_time(smollm2):
    model, tok = smollm2
    prompts = [generation_prompt(r.question, "qa", "default") for r in load_truthfulqa().refs[:6]]
    seconds, answers = {}, {}
    # ten heads over the layers, strong enough that the steered answers are not the plain ones
    steer = make_intervention(model, alpha=40.0, heads=[(layer, layer % 9) for layer in range(0, 30, 3)])
    for intervention in (None, steer):
        t = time.perf_counter()
        stopped = generate_answers(model, tok, prompts, intervention=intervention, batch_size=3, progress=False)
        t_stopped = time.perf_counter() - t
        t = time.perf_counter()
        full = generate_answers(model, tok, prompts, intervention=intervention, batch_size=3, progress=False,
                                stop_at_next_question=False, share_prefix=False)
        t_full = time.perf_counter() - t
        seconds.setdefault("stopped", t_stopped), seconds.setdefault("full", t_full)  # the plain model's
        assert stopped == full
        assert sum(bool(a) for a in full) >= 3  # real answers, not empty strings compared with empty strings
        answers[intervention is None] = stopped
    assert answers[True] != answers[False]  # the shift changes answers, so equal to the reference says it lands right
    assert seconds["stopped"] < seconds["full"]  # the plain model starts the next question well before 50 tokens
