"""What each tab shows, computed without Gradio: status lines, table rows, Plotly figures, form<->config."""
