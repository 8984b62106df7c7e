"""The MLflow models-from-code file of the hmpcl encoder (`pyfunc.ENTRY_POINT`): `mlflow.pyfunc.load_model` runs this
file from the logged model to build the pyfunc from the library's code, so the model stores no pickled object.
Not imported by the library itself."""

import mlflow

from hmpcl_lib.tracking.pyfunc import EncoderModel

mlflow.models.set_model(EncoderModel())
