"""The privacy boundary: find personal and secret data in text (``detect``), replace it by
consistent placeholders and put it back in answers (``pseudonym``), and measure the detector
on a synthetic held-out corpus (``corpus``, ``quality``)."""
