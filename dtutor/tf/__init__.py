"""TensorFlow (Keras 2) in the course: one Keras driver and TensorFlow's three data-parallel strategies.

- ``driver``: ``fit(config, strategy)`` and the launchers' entry point ``train(replicas, **fields)``;
- ``strategy``: the small interface a Keras strategy implements, and ``distributed_dataset``;
- ``mirrored``, ``multiworker``, ``horovod_keras``: ``MirroredStrategy`` (one process, N devices; one device
  is the reference), ``MultiWorkerMirroredStrategy`` (N processes, ``TF_CONFIG``), Horovod for Keras;
- ``setup``: Keras 2 and the logical CPU devices, set before TensorFlow starts; ``make_strategy``;
- ``mirrored_lessons``: notebook 04's custom training loop, the scope mistake, a speed measurement and a
  worker that fails on purpose; ``horovod_keras_lessons``: Horovod-Keras's late broadcast (notebook 03).

Importing this package (or ``dtutor.tf.driver``) imports neither TensorFlow nor torch: TensorFlow starts when
a strategy joins, so the caller can still choose its devices.
"""
