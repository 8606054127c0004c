"""`study report`: the declared tables aggregated over seeds (tables.py) with Welch's test (significance.py), the
protocol beside them (protocol.py), another study beside them (compare.py), the pretraining and search sections
(sections.py), figures (figures.py) and predicted masks (predictions.py), rendered as Markdown, HTML and terminal
text (render.py); report.py assembles the report folder."""
