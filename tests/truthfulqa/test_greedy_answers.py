"""TruthfulQA's greedy answers stop at the model's next "Q:": the answers must be those of the full length."""
import time

import pytest

from iti.truthfulqa.data import load_truthfulqa
from iti.truthfulqa.generation import generate_answers
from iti.truthfulqa.prompts import generation_prompt

from ..core.test_intervention import make_intervention

pytestmark = pytest.mark.real


def test_stopping_at_the_next_question_keeps_every_answer_and_saves_steps(smollm2):
    model, tok = smollm2
    prompts = [generation_prompt(r.question, "qa", "default") for r in load_truthfulqa().refs[:6]]
    seconds = {}
    for intervention in (None, make_intervention(model, alpha=5.0)):
        t = time.perf_counter()
        stopped = generate_answers(model, tok, prompts, intervention=intervention, batch_size=3, progress=False)
        t_stopped = time.perf_counter() - t
        t = time.perf_counter()
        full = generate_answers(model, tok, prompts, intervention=intervention, batch_size=3, progress=False,
                                stop_at_next_question=False)
        t_full = time.perf_counter() - t
        seconds.setdefault("stopped", t_stopped), seconds.setdefault("full", t_full)  # the plain model's
        assert stopped == full
        assert sum(bool(a) for a in full) >= 3  # real answers, not empty strings compared with empty strings
    assert seconds["stopped"] < seconds["full"]  # the plain model starts the next question well before 50 tokens
