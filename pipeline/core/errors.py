"""The one exception a user mistake raises: the CLI prints it on one line and exits non-zero."""


class PipelineError(Exception):
    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
