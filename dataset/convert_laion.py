"""LAION-115M (BLIP synthetic captions) -> url/caption table for img2dataset. See README_1_STAGE.md.

    wget https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/laion_synthetic_filtered_large.json
    python dataset/convert_laion.py --input laion_synthetic_filtered_large.json
"""
import sys

from caption_lists import main

if __name__ == "__main__":
    sys.exit(main("laion_synthetic_filtered_large.json", "laion_dataset"))
