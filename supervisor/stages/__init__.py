"""The stages the engine (supervisor.daemon) runs: what each supplies — its command, its progress signal, its "done"
test, what it verifies before a relaunch and which causes it knows. `training` is one fold of nnU-Net's training
(`nnUNetv2_train`), `preprocessing` one dataset's planning and preprocessing."""
