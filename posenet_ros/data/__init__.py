"""Datasets: on-disk layouts (7-Scenes, Cambridge Landmarks), the torch dataset, synthetic scenes.

`posenet_ros.data.loading.load_frames(root, split)` reads any supported layout, or a rosbag2
(`bag_dataset.py`), into FrameRecords;
`posenet_ros.data.dataset.PoseDataset` turns them into tensors.
"""
