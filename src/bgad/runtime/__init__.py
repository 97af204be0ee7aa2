"""Where and how bgad runs: the device (``devices``), data-parallel training under torchrun
(``distributed``) and progress bars (``progress``)."""
