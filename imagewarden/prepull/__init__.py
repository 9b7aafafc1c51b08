"""Pre-pull configured images onto the nodes that will run them.

``pools`` reads the ``prepull:`` config section (and a KubeSpawner ``profile_list``) into
pools of nodes and images; ``render`` turns pools into DaemonSets without I/O;
``controller`` applies them to the cluster and keeps digests current; ``coverage`` follows
Nodes and Events to tell which node holds which image; ``cli`` is ``imagewarden prepull``.
"""
