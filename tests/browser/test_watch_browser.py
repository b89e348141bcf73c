"""The dashboard on the user's own loop, in a real browser: the loop runs in the cell that shows the
dashboard (the cell is blocked), and Pause, Resume and Stop still work; Stop ends the loop within
about a second. JupyterLab 4 and Notebook 7; screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.browser

PLAIN_LOOP = [
    """\
import time, torch
from torch.nn import functional as F
torch.set_num_threads(1)
import retrain_widgets as rw
from retrain_widgets import examples

model = examples.pretrained_digits_cnn()
digits = examples.digits_loaders(batch_size=64)
seven = examples.task("is_seven")
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
run = rw.watch(model, opt, old_val=digits[1], name="plain loop", store=False, total_steps=5000)
display(run)
t0 = time.monotonic()
while not run.should_stop and run.global_step < 5000:
    for x, y in seven.train:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), (y > 0.5).long())
        loss.backward()
        opt.step()
        run.step(loss)
        time.sleep(0.005)
        if run.should_stop:
            break
    run.epoch_end()
run.finish()
print(f"loop ended: {run.state.value} at step {run.global_step} after {time.monotonic() - t0:.1f} s")""",
]


HF_TRAINER = [
    """\
import time, tempfile, torch
torch.set_num_threads(1)
import transformers
from retrain_widgets.integrations.huggingface import RetrainCallback

torch.manual_seed(0)
config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=2)
model = transformers.BertForSequenceClassification(config)
g = torch.Generator().manual_seed(0)
data = [{"input_ids": torch.randint(0, 100, (8,), generator=g), "labels": i % 2} for i in range(64)]
args = transformers.TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8,
                                      num_train_epochs=400, use_cpu=True, report_to=[], save_strategy="no",
                                      disable_tqdm=True, logging_strategy="no")
cb = RetrainCallback(name="tiny bert")
cb""",
    """\
trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
t0 = time.monotonic()
trainer.train()
print(f"trainer ended: {cb.run.state.value} at step {cb.run.global_step} after {time.monotonic() - t0:.1f} s")""",
]


def _pause_resume_stop(nb, ended: str) -> None:
    nb.click_widget("rw-pause")
    nb.wait_widget_text("rw-status", r"paused", timeout=5)
    progress = nb.widget_text("rw-progress-label")
    time.sleep(1.0)
    assert nb.widget_text("rw-progress-label") == progress  # the loop waits at its step boundary
    nb.screenshot("paused")
    nb.click_widget("rw-pause")  # now "Resume"
    nb.wait_widget_text("rw-status", r"running", timeout=5)
    t_stop = nb.click_widget("rw-stop")
    nb.wait_output(ended, timeout=10)
    waited = time.monotonic() - t_stop
    assert waited < 2.0, f"Stop took {waited:.2f} s to end training"
    nb.wait_widget_text("rw-status", r"stopped", timeout=5)


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_pause_resume_stop_hf_trainer_while_its_cell_is_blocked(notebook_file, open_notebook, frontend):
    nb = open_notebook(notebook_file(HF_TRAINER), frontend)
    nb.run_all()
    nb.wait_widget("rw-watch-slot", timeout=90)
    nb.wait_widget_text("rw-status", r"huggingface running", timeout=90)  # the slot filled at train()
    nb.wait_image_loaded("rw-plot", timeout=30)
    nb.screenshot("hf-running")
    _pause_resume_stop(nb, r"trainer ended: stopped at step \d+")
    nb.screenshot("hf-stopped", css_class="rw-watch")
    nb.assert_no_console_errors()


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_pause_resume_stop_a_plain_loop_while_its_cell_is_blocked(notebook_file, open_notebook, frontend):
    nb = open_notebook(notebook_file(PLAIN_LOOP), frontend)
    nb.run_all()
    nb.wait_widget("rw-watch", timeout=60)
    nb.wait_widget_text("rw-status", r"running", timeout=60)
    nb.wait_image_loaded("rw-plot", timeout=30)
    nb.screenshot("watch-running")

    nb.click_widget("rw-pause")
    nb.wait_widget_text("rw-status", r"paused", timeout=5)
    progress = nb.widget_text("rw-progress-label")
    time.sleep(1.0)
    assert nb.widget_text("rw-progress-label") == progress  # the loop waits inside run.step()
    nb.screenshot("watch-paused")

    nb.click_widget("rw-pause")  # now "Resume"
    nb.wait_widget_text("rw-status", r"running", timeout=5)
    t_stop = nb.click_widget("rw-stop")
    nb.wait_output(r"loop ended: stopped at step \d+", timeout=10)
    waited = time.monotonic() - t_stop
    assert waited < 2.0, f"Stop took {waited:.2f} s to end the loop"
    nb.wait_widget_text("rw-status", r"stopped", timeout=5)
    nb.screenshot("watch-stopped", css_class="rw-watch")
    nb.assert_no_console_errors()
