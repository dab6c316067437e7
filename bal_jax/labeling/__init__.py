"""Label your own images with BAL: a resumable human-in-the-loop project.

    from bal_jax import LabelingProject, ProjectConfig
    project = LabelingProject.create("runs/photos", images="/data/photos",
                                     config=ProjectConfig(classes=("cat", "dog", "bird"),
                                                          per_round=200, rounds=5))
    rnd = project.next_round()                  # rounds/00/to_label.csv, rounds/00/tasks.json
    project.import_labels("round0_labeled.csv") # CSV, Label Studio JSON / JSON_MIN, or DIR/<class>/
    rnd = project.next_round()                  # trains on all labels, picks round 1
    project.status()                            # labels per class / round, CV accuracy
    project.export("model/")                    # then models.predict_folder("model/", ...)

The command line `python -m experiments.label init|next|import|sync|status|export|predict`
drives the same class; `sync` keeps it in step with a Label Studio server (`studio`).
A project folder holds all its state:

    config.json     the settings it is bound to (a different configuration is refused)
    state.json      project id, images folder, classes, rounds' sizes, normalisation, beta
    pool.npz        ids, file sizes/mtimes, content hashes, decoded images, selection and
                    head features and the CDD order, in one atomically written file
    patches.npz     the patch-feature transform (features=patches), for images added later
    pretext/        the rotation network (orbax; features=rotation), likewise
    journal.jsonl   every label ever imported, append-only, rewritten atomically per import
    rounds/NN/      round.json (written last), to_label.csv, tasks.json (Label Studio)
    models/round_NN the classifier that picked round NN; cv.json, exports.json
    label_studio.json  the Label Studio project of each server `sync` used (no API key)

Modules: `config` (settings, one-time choices), `pool` (scan, hash, decode), `journal`,
`formats` (label files in and out), `featurize` (the feature stage), `classifiers` (each
round's classifier), `models` (networks, saved heads, prediction), `studio` (Label Studio
sync), `project` (`LabelingProject`). The classifier step is the runner's (`bal_jax.learners`).
"""

from bal_jax.labeling.config import LabelingError as LabelingError
from bal_jax.labeling.config import ProjectConfig as ProjectConfig
from bal_jax.labeling.models import predict_folder as predict_folder
from bal_jax.labeling.project import LabelingProject as LabelingProject
from bal_jax.labeling.project import Round as Round
