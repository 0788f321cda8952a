"""Front ends that deliver the course: the Gradescope bundle's and GitHub Classroom's helpers."""
