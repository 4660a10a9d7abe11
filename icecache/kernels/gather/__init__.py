"""Page gather (pool -> contiguous staging) and scatter (staging -> pool slots)."""
