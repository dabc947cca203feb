"""Media tools: ffmpeg location and runs, probing, beat tracking, rendering."""
