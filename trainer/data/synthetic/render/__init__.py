"""Drawing a synthetic pedestrian crop with Pillow: the scene, then the person part by part."""
