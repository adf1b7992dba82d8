"""What the notebooks show: figures (:mod:`minildm.notebook.viz`) and the instructor's widget panel
(:mod:`minildm.notebook.panel`, notebook 02)."""
