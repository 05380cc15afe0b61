"""The hostile-inputs suite (reliability row R4): its cases, by how they are inflicted."""
