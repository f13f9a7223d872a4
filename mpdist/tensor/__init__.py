"""mpdist.tensor: distributed tensors (DTensor) over a DeviceMesh, torch.distributed.tensor's counterpart."""
