"""The pipeline: what each DVC stage (one papermill notebook each) runs.

``params.yaml`` -> :func:`~easyhard.pipeline.notebook.setup` (validated :class:`~easyhard.config.Params`
and the repository's :class:`~easyhard.pipeline.paths.Paths`) -> the stage module's ``run`` -> files
under ``data/``, ``runs/<method>/<stage>/`` and ``report/``. One module per DVC stage, so that each
stage's import closure (its ``deps`` in ``dvc.yaml``, see :mod:`.deps`) is exactly the code it runs:

* :mod:`.prepare`, :mod:`.fid_reference`: the data split; Inception features of held-out images;
* :mod:`.central_images`, :mod:`.pretrain`: the easy stage (DP central images, pretraining on them);
* :mod:`.finetune` (and :mod:`.launch` for several processes): the hard stage, DP-SGD;
* :mod:`.sample`: the synthetic dataset;
* :mod:`.evaluate`, :mod:`.report`: FID / accuracy per method, and the comparison across methods.

Which stages do something for which method is data: :data:`.methods.METHODS`. The privacy
bookkeeping every querying stage shares is :mod:`.release`.
"""
