"""CC3M + CC12M + SBU (BLIP synthetic captions) -> url/caption table for img2dataset. See README_1_STAGE.md.

    wget https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/ccs_synthetic_filtered_large.json
    python dataset/convert_cc_sbu.py --input ccs_synthetic_filtered_large.json
"""
import sys

from caption_lists import main

if __name__ == "__main__":
    sys.exit(main("ccs_synthetic_filtered_large.json", "cc_sbu_dataset"))
