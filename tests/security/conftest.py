"""Security and reliability tests: what onnxpress does with hostile or faulty input.

Threat model. onnxpress is run by a user on files they did not write:

- **The model file is untrusted.** It may come from a download or a model hub. Its bytes may be
  truncated, random or crafted; its external-data ``location`` strings may point anywhere
  (``../``, absolute paths, symlinks, hard links, devices, FIFOs); its tensors may be sparse
  memory bombs; its metadata may hold anything, including under onnxpress's own key.
- **Data files are untrusted.** A ``.npz`` / ``.npy`` may be empty, truncated, CRC-corrupt,
  pickled (object arrays: onnxpress never unpickles) or declare 2^40 elements.
- **The user's current directory holds secrets.** Nothing in a model may make onnxpress read
  a file from the current directory, or anywhere but the model's own folder: a tensor read from
  there would be embedded in the output and exfiltrated.
- **Files beside the model are the user's.** onnxpress never modifies its inputs (the model,
  its external data, the data set), never replaces a device or FIFO with a regular file, and
  never deletes a file it did not write. A save interrupted at any point (SIGTERM, SIGKILL,
  disk full) leaves the old model or the new one, never a mix of the two.

Out of scope: a hostile user of the machine racing onnxpress on its own files (TOCTOU between
check and open is narrowed with O_NOFOLLOW and fstat, not closed), and onnxruntime's own
parsing of a model the user asks to run.

Every test here asserts observable behaviour: the bytes of files, exit status and the one-line
error on the command line, and outputs computed by onnxruntime.
"""

from __future__ import annotations
